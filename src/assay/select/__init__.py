"""From verified samples to training data: filters and selectors, LIMO curation, LESS."""
