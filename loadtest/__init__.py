"""Load tests of the profile service.

`locust -f loadtest/locustfile.py --host http://127.0.0.1:8000` runs the users of `locustfile.py`;
`utpm bench serve|tune|loop|reliability` run them (and wrk) against servers `procs` starts, and
write JSON artifacts; `utpm bench report` renders those into docs/performance.md and
docs/reliability.md (`report.py`). Nothing else here writes the docs.
"""
