"""Load tests of the profile service.

`locust -f loadtest/ --host http://127.0.0.1:8000` runs the scenarios of `locustfile.py`;
`utpm bench serve` (`_bench.py`) runs them, a ceiling endpoint and a naive peer side by side and
writes docs/performance.md. Locust imports every .py file under this directory whose name does
not start with "_", so every helper module here starts with "_" (cli.py holds no users).
"""
