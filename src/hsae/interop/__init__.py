"""Interop with other tools: SAELens and Neuronpedia export/import, the LLM judge, steering."""
