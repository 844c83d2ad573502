"""Job scripts from spec values, without a cluster: quoting, rendering, shapes, sacct summaries."""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path

import pytest

from cleftgan_hpc.jobspec.load import load_spec
from cleftgan_hpc.jobspec.models import Resources
from cleftgan_hpc.launch.sbatch import (
    JobState,
    _array_count,
    python_words,
    quote_word,
    render_script,
    setup_line,
    srun_words,
    stage_shape,
    summarize,
)

HOSTILE = [
    "$(touch {c}1)",
    "`touch {c}2`",
    "x; touch {c}3",
    "a && touch {c}4 || touch {c}5",
    "> {c}6",
    "'; touch {c}7; echo '",
    '"; touch {c}8; echo "',
    "$((1+1))*?[a]",
]


def bash(script: str, cwd: Path) -> str:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=cwd, check=True,
                          env={"PATH": "/usr/bin:/bin", "NAME": "value"}).stdout


@pytest.mark.parametrize("word", HOSTILE)
def test_quote_word_keeps_hostile_text_literal(tmp_path: Path, word: str) -> None:
    word = word.format(c=tmp_path / "pwned")
    assert bash(f"printf '%s' {quote_word(word)}", tmp_path) == word
    assert not list(tmp_path.glob("pwned*"))


def test_quote_word_expands_only_variables(tmp_path: Path) -> None:
    assert bash(f"printf '%s' {quote_word('a-$NAME-${NAME}-$(echo no)')}", tmp_path) == "a-value-value-$(echo no)"


def test_setup_line_is_one_command_with_literal_arguments(tmp_path: Path) -> None:
    c = tmp_path / "pwned"
    line = setup_line(f"echo $(touch {c}1); touch {c}2 && touch {c}3 | cat > {c}4 `touch {c}5` $NAME")
    assert bash(line, tmp_path) == f"$(touch {c}1); touch {c}2 && touch {c}3 | cat > {c}4 `touch {c}5` value\n"
    assert not list(tmp_path.glob("pwned*"))


def spec_file(tmp_path: Path, slurm: str, stage_extra: str = "") -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(textwrap.dedent("""
        name: demo
        backend: slurm
        store: file://./store dir
        slurm:
        {slurm}
        stages:
          faces:
            kind: demo_data
        {extra}
        """).format(slurm=textwrap.indent(textwrap.dedent(slurm).strip(), "  "),
                    extra=textwrap.indent(textwrap.dedent(stage_extra).strip(), "    ")))
    return path


def test_render_script_with_hostile_values_runs_no_injected_command(tmp_path: Path) -> None:
    c = tmp_path / "pwned"
    spec = load_spec(spec_file(tmp_path, f"""
        log_dir: "logs $(touch {c}1) `touch {c}2`; x"
        setup: ["echo $(touch {c}3); touch {c}4"]
        env: {{EVIL: "$(touch {c}5); touch {c}6"}}
        python: "/opt/py thon; touch {c}7"
    """, "resources: {constraint: 'a100|h100', sbatch: {comment: '$(touch " + str(c) + "8)'}}"), env={}).spec
    text = render_script(spec, "demo-1", "faces", "/usr/bin/python3")
    subprocess.run(["bash", "-n"], input=text, text=True, check=True)  # it parses as a script
    assert "#SBATCH --constraint='a100|h100'" in text
    # Run everything up to the stage itself: the setup lines and exports must create no file.
    head = text.split("# the stage")[0]
    bash(head, tmp_path)
    assert not list(tmp_path.glob("pwned*"))
    cmd_line = next(line for line in text.splitlines() if line.startswith("srun "))
    assert "'/opt/py thon; touch" in cmd_line and "--stage faces" in cmd_line


def test_render_array_and_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from cleftgan_hpc.jobspec.stages import DemoDataStage

    monkeypatch.setattr(DemoDataStage, "array_tasks", lambda self: 10, raising=False)
    spec = load_spec(spec_file(tmp_path, """
        array_parallelism: 3
        container: {runtime: apptainer, image: /img/c.sif, binds: [/data]}
    """, "resources: {gpus: 2, partition: gpu}"), env={}).spec
    text = render_script(spec, "demo-1", "faces", "/usr/bin/python3")
    assert "#SBATCH --array=0-9%3" in text and "#SBATCH --gpus-per-node=2" in text
    assert "#SBATCH --partition=gpu" in text and "#SBATCH --signal=USR2@120" in text
    assert '--stage faces --task "${SLURM_ARRAY_TASK_ID}"' in text
    words = python_words(spec, "/usr/bin/python3")
    assert words[:3] == ["apptainer", "exec", "--nv"] and words[-2:] == ["/img/c.sif", "python"]
    assert words[3:5] == ["--bind", "/data"] and str(spec.slurm.log_dir) in words  # logs always visible


def test_pyxis_srun_arguments(tmp_path: Path) -> None:
    spec = load_spec(spec_file(tmp_path, """
        container: {runtime: pyxis, image: "nvcr.io#nvidia/pytorch:24.05-py3", mounts: ["/data:/data"]}
    """), env={}).spec
    words = srun_words(spec)
    assert words[0] == "--container-image=nvcr.io#nvidia/pytorch:24.05-py3"
    assert words[1].startswith("--container-mounts=/data:/data,")
    assert python_words(spec, "/usr/bin/python3") == ["python"]


def test_stage_shape() -> None:
    """The shape comes from the contract each kind declares (StageBase's defaults otherwise)."""
    from cleftgan_hpc.jobspec.stages import DemoDataStage, FinetuneStage, SynthesizeStage

    plain = DemoDataStage.model_validate({"kind": "demo_data"})
    tune = FinetuneStage.model_validate({"kind": "finetune", "network": "random", "dataset": "d.zip", "gpus": 4})
    synth = SynthesizeStage.model_validate(
        {"kind": "synthesize", "network": "n.pkl", "dataset": "d", "count": 40_000, "tasks": 40}
    )
    assert stage_shape(plain, Resources(gpus=4)).tasks_per_node == 1
    assert stage_shape(tune, Resources(gpus=4)).tasks_per_node == 4
    assert stage_shape(synth, Resources()).array_tasks == 40
    assert stage_shape(plain, Resources()).array_tasks == 0


def test_sacct_summaries() -> None:
    assert summarize([JobState("12", "PENDING", "0:0", "Dependency")]) == "PENDING (Dependency)"
    assert summarize([JobState("12", "FAILED", "1:0", "None")]) == "FAILED exit 1:0"
    states = [JobState("7_0", "COMPLETED", "0:0", ""), JobState("7_1", "RUNNING", "0:0", ""),
              JobState("7_[2-5%2]", "PENDING", "0:0", "JobArrayTaskLimit")]
    assert summarize(states) == "4 PENDING, 1 COMPLETED, 1 RUNNING"
    assert _array_count("7_[0-3,5,7-9%2]") == 8
