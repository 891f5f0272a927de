"""Backbones (HF T5/BART), visual embedding, joint encoder and generation."""
