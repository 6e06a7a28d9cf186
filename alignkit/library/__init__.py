"""The shipped recipe library: what exists (`registry`), finding a recipe by name (`lookup`), and copying one
out for editing (`copying`, behind `alignkit recipes cp`). Light: yaml and pydantic only.
"""
