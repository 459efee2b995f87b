"""Dialogue layer engines, ROS-free: rule answers, the knowledge base, operator personas.

- rules.py: whole-utterance intents from config/rules.yaml, answered without the LLM.
- knowledge.py: per-persona documents, FTS5 bm25 + MiniLM dense retrieval, RRF fusion.
- persona_store.py: operator personas in SQLite merged with config/personas.yaml.
"""
