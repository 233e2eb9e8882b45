"""Built-in datasets: image folders, csv manifests, WebDataset shards, MNIST-format IDX files and scikit-learn's
digits.

One module per dataset (:mod:`.imagefolder`, :mod:`.manifest`, :mod:`.webdataset`, :mod:`.idx`,
:mod:`.sklearn_digits`), the one image decoder (:mod:`.decode`), the split sequences (:mod:`.splits`), the
decoded-sample cache of the file datasets (:mod:`.cache`) and the shared checks (:mod:`.common`). Every factory
returns a :class:`plugtrain.core.data.DatasetSplits` whose splits are sequences of ``(image, target)`` with
``image`` an ``HxWxC`` uint8 array (with ``pixels = "raw"``: the values as stored, uint8, uint16 or float32, and any
channel count), a ``targets`` list (no decoding) for samplers, and ``skipped`` / ``problems``
describing what indexing dropped (see :class:`.splits.ImageFileSplit`). Every factory has a ``read_image``
attribute (see the datasets hook in :mod:`plugtrain.core.hookspecs`) that reads one file as that dataset's samples
come out, for ``plugtrain predict``.

When faults are found
---------------------
* At build time, always a :class:`~plugtrain.core.errors.PlugtrainError` (whatever ``on_error`` says): a missing
  root, manifest or IDX file, a folder without class sub-folders, a manifest without the needed header columns,
  an IDX file with a bad header or too few bytes, a missing, compressed, truncated or corrupt tar shard, a bad
  parameter, a data set with no usable sample left, a decoded-sample cache that does not fit.
* At build time, per ``on_error``: an empty class folder, a manifest row whose file is missing or whose label is
  out of range / unparsable, an IDX label out of range, a shard sample without an image or target member (or a
  target out of range). ``"raise"``: a PlugtrainError naming the folder, or the ``csv:line`` and path, or the IDX
  file and index, or ``shard:key``. ``"skip"``: the sample is dropped and counted in the split's
  ``skipped`` (an empty class folder drops no sample: the class is kept, so labels stay those of the folder names,
  and it is listed in ``problems``).
* At ``__getitem__`` (in DataLoader workers): a corrupt, truncated, zero-byte, unreadable or vanished image file
  raises :class:`~plugtrain.core.data.SampleError` with the path and the reason; the runtime raises or skips.

A grayscale image in an RGB data set (or a colour one with ``channels = 1``) is converted, never a fault.
"""

from __future__ import annotations

from plugtrain import Component, hookimpl


@hookimpl
def plugtrain_datasets():
    from plugtrain.plugins.datasets import idx, imagefolder, manifest, sklearn_digits, webdataset

    return [
        Component("imagefolder", imagefolder.imagefolder,
                  summary="Images in one sub-folder per class (train/val folders or a split).",
                  fits={"tasks": ("classification",)}),
        Component("csv", manifest.csv_manifest,
                  summary="Images listed in a csv manifest: path,label, path,labels (multilabel) or path,target.",
                  fits={"tasks": ("classification", "multilabel", "regression")}),
        Component("webdataset", webdataset.webdataset,
                  summary="Images in WebDataset .tar shards (paths, brace patterns, pipe: URLs), random access.",
                  fits={"tasks": ("classification", "multilabel", "regression")}),
        Component("idx", idx.idx, summary="MNIST-format IDX files (MNIST, Fashion-MNIST), raw or gzipped.",
                  fits={"tasks": ("classification",)}),
        Component("sklearn-digits", sklearn_digits.sklearn_digits,
                  summary="scikit-learn's 1,797 8x8 handwritten digits (no files).",
                  fits={"tasks": ("classification", "regression")}),
    ]


def validate(factory, params, defaults, context=None):
    """``plugtrain check`` of a dataset's parameters: the factory's own ``validate`` when it has one (webdataset's
    shard names), so that what the build would refuse is found before a run starts. A factory check with a
    ``context`` parameter gets the :class:`~plugtrain.core.runtime.rundir.CheckContext` too."""
    from plugtrain.core.runtime.rundir import CheckContext, takes_context

    check = getattr(factory, "validate", None)
    if not callable(check):
        return []
    extra = {"context": context if context is not None else CheckContext()} if takes_context(check) else {}
    return list(check(params, defaults, **extra))


PLUGTRAIN_VALIDATE = validate
