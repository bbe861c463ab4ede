"""Operator tools: doctor, bench, the sample-day and tiny-model generators."""
