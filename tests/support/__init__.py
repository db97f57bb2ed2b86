"""Helpers that only tests and benchmarks use (tiny models, webdataset eval sets): kept out of
the `tasks` package so nothing a stage ships depends on them. Import as `tests.support.<name>`
(pytest puts the repository root on sys.path; benchmarks insert it themselves)."""
