"""Synthesize: turn collected records into chat examples, with the teacher where the recipe says."""
