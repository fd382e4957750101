"""The papermill notebook chain, nbconvert rendering and the index page."""
