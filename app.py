"""Gradio app for the Hugging Face Space (placeholder until the app issue lands)."""
