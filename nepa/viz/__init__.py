"""Pictures of what a trained (or random-init) run computes on one image.

attention:   the predictor's real attention weights of chosen query patches at one layer.
similarity:  cosine similarity of a patch's embedding (z and a layer's output h) to all others.
figures:     matplotlib (Agg, no pyplot) figure builders, also the all-scan-orders panel.

Tokens arrive in scan order but carry their grid coordinates; every map goes back to the
image grid through those coordinates (:func:`nepa.viz.grid.to_grid`), whatever the order.
"""

from nepa.viz.attention import AttentionMaps, attention_maps
from nepa.viz.grid import default_cells, parse_cells, to_grid, token_index
from nepa.viz.image_input import ImageInput, load_image_input
from nepa.viz.model import VizError, VizModel, image_model, load_viz_model
from nepa.viz.similarity import SimilarityMaps, similarity_maps

__all__ = [
    "AttentionMaps",
    "ImageInput",
    "SimilarityMaps",
    "VizError",
    "VizModel",
    "attention_maps",
    "default_cells",
    "image_model",
    "load_image_input",
    "load_viz_model",
    "parse_cells",
    "similarity_maps",
    "to_grid",
    "token_index",
]
