"""The dashboard's panels; each is an ipywidgets container usable on its own (see widgets/__init__)."""
