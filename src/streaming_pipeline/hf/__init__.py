"""Hugging Face datasets: Parquet shards, a day's export, process-dataset."""
