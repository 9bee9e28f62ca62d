"""Model evaluation: predictions, LLM judges and scores for HLE and Do-Not-Answer."""
