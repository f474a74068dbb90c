"""A built-in quality probe for moving-shapes videos: do generated clips show what they were asked for?

The examples train diffusion models on :class:`~reference_models.common.data.MovingShapes` for a few
CPU minutes. :class:`ShapesProbe` scores their samples against their conditions:

* a small classifier, trained once in seconds on ground-truth clips of the same geometry, reads the
  single (primary) object's colour (8 ``PALETTE`` names; none for gray clips), shape kind (5
  ``SHAPE_KINDS``), size (``"small"``/``"large"``, as captions say) and direction of motion (the 8
  ``DIRECTIONS``, the one at ``t = 0`` as captions name it). :meth:`ShapesProbe.evaluate` reports the
  accuracy of each attribute over the clips whose condition names it, next to the accuracy the
  probe reaches on held-out ground truth at the same frame rates (the ceiling to compare with);
* the fraction of clips showing exactly one object, counted without the classifier: foreground
  pixels (background is -1, objects are bright) in 8-connected components per frame;
* a Frechet distance between the classifier's penultimate features of the generated clips and of
  as many real clips drawn from the same distribution at the same rates, with the distance between
  two real sets of that size as its noise floor (small sets bias the distance upward).

Why it is built this way (the classifier, :class:`ProbeNet`). Motion is read from per-frame moments
of the soft foreground mask (area, centroid, second moments, mean colour, centroid steps) through an
MLP; shape kind from a small 2-D CNN over two frames. The moments give direction and size directly
(a plain 3-D CNN needed minutes to learn direction); horizontal flips, an exact symmetry of the data
(every kind is mirror-symmetric, pixel centres map onto pixel centres), double the training clips.

Direction is ambiguous for some clips: a shape that bounces off a wall before the second frame
shows the reflected direction, and slow shapes at high frame rates move by less than a pixel.
Labels stay the caption's (the direction at ``t = 0``); the probe's held-out ground-truth accuracy
(overall, per rate, and on the clips without a bounce before frame 1) is stored with it, so a
generated clip's direction accuracy is read against that number, never against 1.

The probe trains on one-object clips (``max_shapes=1``); on clips with several objects its
attribute predictions are not meaningful, which the one-object fraction shows.

Caching. Weights live in ``<cache>/shapes_probe/probe-<key>.safetensors`` with a JSON manifest
(spec, SHA-256 of the tensor file, held-out accuracies), both written atomically (temporary file in
the same directory, then ``os.replace``), loaded with ``json`` and ``safetensors`` only (never
pickle). ``key`` hashes everything that defines the probe (:class:`ProbeSpec`, its
:class:`ProbeRecipe` and ``PROBE_VERSION``). The cache directory is ``cache_dir=`` when given,
else ``$VDBLOCKS_CACHE``, else ``$XDG_CACHE_HOME/vdblocks``, else ``~/.cache/vdblocks``;
``cache_dir=False`` disables it. A file that does not verify is rebuilt with a warning. Probes are
also memoised per process, so building the same probe twice reads nothing.

Regenerate the committed ground-truth figures of ``docs/probe.md``::

    python -m reference_models.common.probe --ground-truth --out docs/probe/ground_truth.json --page docs/probe.md

Render an example's own measurement (its ``probe.json``, EVDM's per-task metrics) into the
``<!-- probe-run:start -->`` block of its docs page (:func:`render_run_table`; see
:mod:`.run_report` for the reports it knows)::

    python -m reference_models.common.probe --run-report docs/systems/etc_probe/probe.json --page docs/systems/etc.md

Layout, one concept per module: :mod:`.spec` (``ProbeSpec``, ``ProbeRecipe``, the attribute
names), :mod:`.captions` (caption parsing, conditions), :mod:`.objects` (object counting),
:mod:`.net` (``ProbeNet``), :mod:`.training` (training, prediction, held-out accuracy),
:mod:`.cache` (cache directory, atomic save, verified load), :mod:`.result` (``ProbeResult``),
:mod:`.shapes_probe` (``ShapesProbe``), :mod:`.ground_truth` (``docs/probe.md``'s figures),
:mod:`.run_report` (the examples' run tables), :mod:`.page` (filling a page's generated block) and
:mod:`.cli` (the command line, run by ``__main__``).
"""

from .cache import default_cache_dir
from .captions import parse_caption, parse_caption_objects
from .ground_truth import ground_truth_record, render_ground_truth_table
from .net import ProbeNet
from .objects import count_objects, one_object_fraction
from .result import ProbeResult
from .run_report import render_run_table
from .shapes_probe import ShapesProbe
from .spec import ATTRIBUTES, FOREGROUND_THRESHOLD, PROBE_VERSION, SIZES, ProbeRecipe, ProbeSpec
from .training import train_probe

__all__ = [
    "PROBE_VERSION",
    "render_run_table",
    "ATTRIBUTES",
    "SIZES",
    "FOREGROUND_THRESHOLD",
    "ProbeRecipe",
    "ProbeSpec",
    "ProbeNet",
    "ProbeResult",
    "ShapesProbe",
    "parse_caption",
    "parse_caption_objects",
    "count_objects",
    "one_object_fraction",
    "train_probe",
    "default_cache_dir",
    "ground_truth_record",
    "render_ground_truth_table",
]
