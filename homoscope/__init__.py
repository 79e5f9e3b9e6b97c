"""homoscope: how alike are NLP foundation models, inside and in what they predict."""
__version__ = "0.1.0"
