"""A seeded synthetic vEM phantom with exact ground truth (``famous phantom``).

The phantom is a piece of a HeLa-like cell in the look of the paper's
(inverted, TEM-like) FIB-SEM data, in the five classes of the ``fibsem``
preset: mid-grey granular cytoplasm crossed by thin dark ER membranes; a large
dark, textured nucleus with heterochromatin and envelope, cut by a stack edge;
curved dark mitochondria with lighter cristae; light round early endosomes with
a dark rim; dark round late endosomes; lysosomes that are only slightly darker
than the cytoplasm and speckled (axis-aligned ellipsoids, since the paper
segments them as the box's inscribed ellipse). A few organelle pairs touch
(0-1 voxel apart), one mitochondrion is a dumbbell whose two lobes are joined
by a thin bridge on a few middle slices only (the paper's open failure case),
organelles are cut by the x, y and z edges, every slice is shifted by up to
±1 pixel as FIB-SEM misalignment (image and truth alike), then blurred and
made noisy.

All shapes are analytic (ellipsoids; tubes as chains of spheres along smooth
3-D curves) and defined in µm, so one seed gives the same cell at any voxel
size. Slices are rendered one at a time, each a pure function of the
phantom's parameters (shape, seed, voxel size) and the slice index, so a
300 x 2048 x 2048 phantom is written without holding the volume.

Modules, in the order a phantom is made:

- :mod:`.geometry`: ellipsoids and tubes in µm, their sections on a slice canvas;
- :mod:`.organelles`: the class indices and names, :class:`~.organelles.Organelle`;
- :mod:`.placement`: where the organelles, ER and vesicles go (seeded);
- :mod:`.texture`: the seed streams and smooth noise fields;
- :mod:`.render`: the grey values of the sample, then blur, shift and noise;
- :mod:`.cell`: :class:`~.cell.Phantom`, which renders slices and their truth boxes;
- :mod:`.truth`: ``truth.csv``, truth STLs, and :func:`~.truth.load_truth`;
- :mod:`.write`: :func:`~.write.write_phantom`, the folder ``famous phantom`` writes.

Example
-------
>>> from famous_addon.core.phantom.cell import Phantom
>>> ph = Phantom((24, 192, 192), seed=0, voxel_size_nm=(20, 20, 20))
>>> image, labels = ph.render_slice(12)
>>> boxes = ph.boxes(12, labels)
"""
