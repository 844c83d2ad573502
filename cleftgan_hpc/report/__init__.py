"""The run report: one self-contained HTML page of a run, in the store beside it.

    read.py      reading the run's objects; whatever cannot be read becomes a note, never an error
    view.py      one stage as the report sees it (kind, config, status, result, keys, links)
    page.py      HTML pieces: tables, figures, an SVG line chart, the page and its CSS
    sections.py  demo_data, preprocess, finetune;  results.py  sweep, synthesize, evaluate
    build.py     the page of a run, and writing it to runs/<run-id>/report.html
    commands.py  `cleftgan-hpc report`, and the report written at a run's end and by `status`
"""
