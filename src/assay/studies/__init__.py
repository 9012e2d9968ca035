"""Studies that compare methods end to end, and the pipelines behind the quickstart and recipes."""
