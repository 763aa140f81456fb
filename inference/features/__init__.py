"""Modality-independent image features."""
