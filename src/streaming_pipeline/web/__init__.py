"""`streaming-pipeline serve`: a read-only web view over the progress database and the
destination's files (search, listen and read along, days as they run)."""
