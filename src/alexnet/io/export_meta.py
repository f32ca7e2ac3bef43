"""The export metadata: one JSON document, ``alexnet-export/1``, that tells any program how to feed a network this
package exported and how to read its output, with nothing but that document.

Where it lives: an ONNX file's ``metadata_props`` entry ``alexnet`` (onnxruntime:
``json.loads(session.get_modelmeta().custom_metadata_map["alexnet"])``); a ``.pt2`` program's
``extra_files["alexnet.json"]``; a Hub folder's ``config.json`` (beside ``model.safetensors``, which its key
``weights`` names; its ``input`` is the PyTorch network's). Keys:

- ``alexnet_format``: ``"alexnet-export/1"``. A reader refuses other values; a change a reader must know of
  gets a new number.
- ``variant``: ``alexnet``, ``alexnet_bn`` or ``alexnet_owt``; ``model_options``: its architecture options (LRN).
- ``class_names``: output index i is class ``class_names[i]`` (WordNet ids such as ``n01440764`` for ImageNet).
- ``input``: ``{"name", "dtype", "layout", "height", "width"}``: ``float32`` ``NCHW`` (the default export), or
  ``uint8`` ``NHWC`` for a graph that normalises inside (``export --with-preprocess``); batch size is free.
- ``output``: ``{"name": "logits", "softmax": false}``: unnormalised scores; softmax them for probabilities.
- ``preprocess``: ``resize``, ``crop``, ``colour`` (``"RGB"``), ``scale`` (1/255), ``in_graph`` (true: the graph
  does the scaling and normalisation), and ``normalize``, one of
  ``"channel"``: ``mean`` and ``std``, three floats each (RGB, on the [0, 1] scale), or
  ``"mean_image"``: ``mean_image`` ``{"shape": [3, R, R], "dtype": "float32", "byte_order": "little",
  "base64": ...}``, the mean image at the resize size R (RGB, [0, 1] scale, channel-first), subtracted instead
  of any mean/std (the paper's normalisation, Caffe's ``--mean`` imports).
- ``source``: where the weights came from; ``published``: the accuracy published for exactly these weights
  (only for a file identified by its checksum: foreign.py).

What the consumer does, in order (``alexnet predict`` does the same):
1. decode the image to 8-bit RGB, not BGR (EXIF orientation applied; greyscale, CMYK and palette images converted,
   transparency composited on white);
2. resize it so the shorter side is ``resize`` px (bilinear with antialiasing, as PIL's ``BILINEAR``; the longer
   side ``int(resize * long / short)``), then keep the centre ``resize`` x ``resize`` square (top offset
   ``int(round((h - resize) / 2))``, likewise left);
3. cut the centre ``crop`` x ``crop`` window of that square (offset ``int(round((resize - crop) / 2))``);
4. ``in_graph`` true: feed the uint8 crops as (N, crop, crop, 3). Otherwise: multiply by ``scale`` (float32,
   [0, 1]), then ``(x - mean[c]) / std[c]`` per channel, or subtract the same window of the mean image, and feed
   (N, 3, crop, crop). A graph with the mean image inside holds its centre window only: other views (mirror,
   corners) need the default export, whose consumer crops the mean image with the image.
"""

from __future__ import annotations

import json
from typing import Any

from ..data.preprocess import Preprocess
from ..errors import UserError
from .weights import Loaded

EXPORT_FORMAT = "alexnet-export/1"
ONNX_KEY = "alexnet"  # the ONNX metadata_props entry
PT2_FILE = "alexnet.json"  # the .pt2 extra file


def document(loaded: Loaded, in_graph: bool = False, input_name: str = "images") -> dict[str, Any]:
    """The metadata of ``loaded`` exported as a float NCHW network, or (``in_graph``) as one taking uint8 NHWC."""
    crop = loaded.preprocess.crop
    shape = {"height": crop, "width": crop}
    io = {"name": input_name, "dtype": "uint8", "layout": "NHWC"} if in_graph else {
        "name": input_name, "dtype": "float32", "layout": "NCHW"}  # fmt: skip
    doc: dict[str, Any] = {
        "alexnet_format": EXPORT_FORMAT,
        "variant": loaded.variant,
        "model_options": loaded.options,
        "class_names": loaded.class_names,
        "input": io | shape,
        "output": {"name": "logits", "softmax": False},
        "preprocess": loaded.preprocess.to_export() | {"in_graph": in_graph},
        "source": loaded.source,
    }
    if loaded.published:
        doc["published"] = loaded.published
    return doc


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, separators=(",", ":"))


def parse(text: str | dict[str, Any], where: str) -> dict[str, Any]:
    """A document read back (its JSON text or object), checked, with ``preprocess`` as a ``Preprocess``;
    a ``UserError`` naming ``where`` for anything else."""
    try:
        doc = json.loads(text) if isinstance(text, str) else dict(text)
        fmt = doc.get("alexnet_format")
        if fmt != EXPORT_FORMAT:
            newer = isinstance(fmt, str) and fmt.startswith("alexnet-export/")
            raise UserError(f"{where}: export metadata {fmt!r} is not {EXPORT_FORMAT!r}"
                            + ("; a newer alexnet wrote it: upgrade this package" if newer else ""))  # fmt: skip
        pre = Preprocess.from_export(doc["preprocess"])
        names = [str(n) for n in doc["class_names"]]
        in_graph = bool(doc["preprocess"].get("in_graph", False))
        inp = doc["input"]
        if (inp["dtype"], inp["layout"]) != (("uint8", "NHWC") if in_graph else ("float32", "NCHW")):
            raise ValueError(f"input {inp['dtype']} {inp['layout']} does not match in_graph={in_graph}")
    except UserError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise UserError(f"{where}: malformed export metadata ({type(e).__name__}: {e})") from None
    return doc | {"preprocess": pre, "class_names": names, "in_graph": in_graph}
