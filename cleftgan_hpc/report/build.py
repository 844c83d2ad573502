"""The run report: one self-contained HTML page, written to runs/<run-id>/report.html.

    header (job, run, store, overall state) -> the stage table -> a section per stage: its state,
    the error and log tail when it failed, links to its logs, its key outputs, what is missing

It renders for a run in any state (stages not done are shown as such), and whatever part of the
run cannot be read (the spec, a status record, an output) is named on the page instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cleftgan_hpc.errors import CleftGanError
from cleftgan_hpc.layout import join_key
from cleftgan_hpc.plan import make_plan
from cleftgan_hpc.report import results, sections
from cleftgan_hpc.report.page import Html, badge, figure, join, note, page, table, tag
from cleftgan_hpc.report.read import Reader
from cleftgan_hpc.report.view import REPORT_FILE, StageView, href, overall, took, when
from cleftgan_hpc.runs import RunState

LOG_TAIL = 40  # lines of a failed stage's log shown on the page

SECTIONS: dict[str, Callable[[StageView, Reader], Html]] = {
    "demo_data": sections.demo_data,
    "preprocess": sections.preprocess,
    "finetune": sections.finetune,
    "sweep": results.sweep,
    "synthesize": results.synthesize,
    "evaluate": results.evaluate,
    "severity": results.severity,
    "compare": results.compare,
}


def stage_views(run: RunState, reader: Reader) -> tuple[list[StageView], str | None, str | None]:
    """Every stage of the run, in plan order; the job's name and backend, or why they are unknown."""
    try:
        spec = run.load_spec()
        plan = make_plan(spec, run.run_id)
        views = [StageView(run.run_id, s.name, s.kind, s.config) for s in plan.stages]
        job: str | None = f"job {spec.name}, {spec.backend} backend"
        problem = None
    except (CleftGanError, ValueError) as exc:  # a damaged or unreadable spec.yaml: show what the records say
        problem = f"the run's spec ({run.store.uri(join_key(run.prefix, 'spec.yaml'))}) could not be read: {exc}"
        names = sorted({i.key.split("/")[3] for i in reader.list(join_key(run.prefix, "stages") + "/")
                        if i.key.count("/") >= 4})
        views, job = [StageView(run.run_id, n, None) for n in names], None
    for v in views:
        try:
            v.status = run.status(v.name)
        except CleftGanError as exc:
            v.problems.append(f"status record: {exc}")
        try:
            v.result = run.result(v.name)
        except CleftGanError as exc:
            v.problems.append(f"result record: {exc}")
    return views, job, problem


def render_report(run: RunState) -> str:
    """The report page of ``run`` as HTML (reads the store; never raises for what it cannot read)."""
    reader = Reader(run.store)
    views, job, problem = stage_views(run, reader)
    for v in views:  # one HEAD and one short listing a stage, not a listing of all it wrote
        v.logs = [v.key("log.txt")] if reader.exists(v.key("log.txt")) else []
        v.logs += sorted(i.key for i in reader.list(v.key("tasks") + "/") if i.key.endswith(".log.txt"))
    state = overall([v.state for v in views])
    head = join([
        tag("h1", join(["Run ", run.run_id, " ", badge(state)])),
        tag("p", f"{job or 'job unknown'} · store {run.store.url} · report written {when(time.time())}", class_="sub"),
        tag("p", join([tag("a", "spec.yaml", href="spec.yaml"), " (the resolved spec this run executes)"]),
            class_="links"),
    ])
    if problem:
        head += tag("p", problem, class_="error")
    rows = [[tag("a", v.name, href=f"#stage-{v.name}"), v.kind or "?", badge(v.state),
             v.status.attempt if v.status else "-", when(v.status.started) if v.status else "-", took(v.status),
             (v.status.host if v.status else None) or "-",
             tag("a", "log", href=v.href(v.logs[0])) if v.logs else "-",
             ((v.status.error if v.status else None) or "; ".join(v.problems)).split("\n", 1)[0][:160]]
            for v in views]
    body = head + tag("h2", "Stages") + table(
        ["stage", "kind", "state", "try", "started", "took", "host", "log", "detail"], rows, class_="stages")
    if not views:
        body += note("this run has no stage records yet")
    for v in views:
        body += stage_section(run, v, reader)
    return page(f"{run.run_id}: {state}", body)


def stage_section(run: RunState, v: StageView, reader: Reader) -> Html:
    out = [tag("h2", join([v.name, " ", tag("small", v.kind or "kind unknown"), " ", badge(v.state)]),
               id=f"stage-{v.name}")]
    if v.logs:
        out.append(tag("p", join(["logs: "] + [tag("a", k[len(v.prefix) + 1:], href=v.href(k)) for k in v.logs]),
                       class_="links"))
    if v.result:
        out.append(tag("p", join(["outputs: "] + [tag("a", name, href=v.href(key), title=key)
                                                  for name, key in v.result.items() if isinstance(key, str)]),
                       class_="links"))
    st = v.status
    if st is not None and st.state in ("failed", "cancelled") and st.error:
        out.append(tag("div", st.error, class_="error"))
    if st is not None and st.state == "failed":
        out.append(_log_tail(v, reader, v.key("log.txt") in v.logs))
    if v.state in ("pending", "running"):
        out.append(note(f"{'running (attempt ' + str(st.attempt) + ')' if v.state == 'running' else 'not run yet'}: "
                        "not done; what it has written so far is shown"))
    if v.state == "cancelled":
        out.append(note("it did not run to the end; what it wrote earlier is shown"))
    section = SECTIONS.get(v.kind or "")
    if section is None:
        out.append(_objects(v, reader))
    else:
        try:
            out.append(section(v, reader))
        except Exception as exc:  # noqa: BLE001 - an output of an unexpected shape must not cost the page
            out.append(tag("p", f"this stage's outputs could not be shown: {type(exc).__name__}: {exc}",
                           class_="error"))
    out.append(_problems(v, reader.take_notes()))
    return join(out)


def _log_tail(v: StageView, reader: Reader, present: bool) -> Html:
    if not present:
        return note("no log in the store: the stage's process ended before uploading it "
                    "(on Slurm, `cleftgan-hpc logs SPEC STAGE` shows the job's own log)")
    text = reader.text(v.key("log.txt")) or ""
    lines = text.rstrip("\n").split("\n")[-LOG_TAIL:]
    return tag("h3", f"The log's last {len(lines)} lines") + tag("pre", "\n".join(lines), class_="log")


def _objects(v: StageView, reader: Reader) -> Html:
    """A stage whose kind is unknown (the spec could not be read): its pictures and its objects, linked."""
    items = reader.list(v.prefix + "/")
    if not items:
        return note("no objects")
    pngs = [i.key for i in items if i.key.endswith(".png") and i.key.count("/") == v.prefix.count("/") + 1]
    pictures = [(k, reader.picture(k, 600)) for k in pngs[:6]]
    rows = [[tag("a", i.key[len(v.prefix) + 1:], href=v.href(i.key)), i.size] for i in items[:50]]
    return join(figure(p, k.rsplit("/", 1)[-1], v.href(k)) for k, p in pictures if p is not None) + table(
        ["object", "bytes"], rows)


def _problems(v: StageView, notes: list[tuple[str, str]]) -> Html:
    """What could not be read. A stage not done yet has not written everything: only damage counts then."""
    shown = [f"{key}: {what}" for key, what in notes if v.settled or what != "missing"] + v.problems
    if not shown:
        return Html()
    items = join(tag("li", text) for text in shown)
    return tag("div", tag("b", "Not shown, because missing, damaged or unreadable:") + tag("ul", items),
               class_="problems")


def write_report(run: RunState) -> str:
    """Render the report and put it at runs/<run-id>/report.html (create-or-replace); its store key."""
    key = join_key(run.prefix, REPORT_FILE)
    run.store.put_text(key, render_report(run))
    return key


__all__ = ["REPORT_FILE", "href", "render_report", "stage_views", "write_report"]
