"""The read model of the work: a day's archives and totals (`day`), their text (`text`, what
`status` prints) and the self-contained HTML report (`report`). `status`, `finalize-day`, the
report and the web view all read these, so that a figure is computed by one rule. Read-only."""
