"""Quantify: per-organelle 3-D morphometrics, proximity and per-class statistics.

Quantify measures the instance LABELS of a run (``famous quantify``, the
panel's "Quantify" section); measuring the Blender MESHES is
:mod:`famous_addon.blender.measure`. The package is split by job:

- :mod:`.morphometry`: :func:`~.morphometry.measure_labels`, one row per organelle.
- :mod:`.surface`: the smooth marching-cubes surface (area, enclosed volume).
- :mod:`.skeleton`: length and branches of tubular organelles.
- :mod:`.proximity`: surface gaps to the nearest organelle of each class.
- :mod:`.tables`: per-class statistics and the mesh areas merged from the add-on.
- :mod:`.labelfile`: reading and exporting instance label TIFFs.
- :mod:`.plots`: histograms and scatter plots.
- :mod:`.run`: :func:`~.run.quantify_run`, what ``famous quantify`` runs.

Input is an instance label volume (one id per organelle, ZYX, uint16/uint32)
with its voxel size in nm (z, y, x); every output is in µm. Each organelle is
measured on its own bounding-box crop (``scipy.ndimage.find_objects``), so the
cost grows with the organelles' size, not the stack's.

Measurements (columns of ``organelles.csv``)
--------------------------------------------
``volume_um3``
    Voxel count times the voxel volume.
``surface_um2``
    Area of a marching-cubes surface. The surface is the zero level of the
    mask's signed distance (``scipy.ndimage.distance_transform_edt`` with the
    voxel size as ``sampling``), resampled linearly to isotropic voxels and
    lightly smoothed (Gaussian, 0.7 voxel). Marching cubes on the raw binary
    mask overestimates a sphere's area by ~9 % (isotropic voxels) to ~14 %
    (z 2.5x coarser) because of the voxel staircase; this surface was within
    ~1 % of the true area for spheres 30-50 voxels across with slices 1-8x
    the pixel size, and within 4 % for spheres only 4 slices thick (the
    tests check 3 % at (10, 10, 10) and (20, 8, 8) nm).
    ``area_mesh_um2`` is the Blender mesh's area, merged from
    ``quantification.csv`` when the add-on has written one.
``equiv_diameter_um``
    Diameter of the sphere of the same volume.
``sphericity``
    pi^(1/3) (6 V)^(2/3) / A with V the volume the surface encloses (not the
    voxel count: for objects a few voxels across the two differ, and only
    the surface's own volume keeps sphericity <= 1): 1 for a sphere, smaller
    for any other shape.
``axis_major_um``, ``axis_middle_um``, ``axis_minor_um``
    Principal axis lengths from a PCA of the voxels (µm). A solid ellipsoid
    with semi-axis a has variance a²/5 along that axis, so a full axis length
    is 2 sqrt(5 λ) for the covariance eigenvalue λ. The covariance is that of
    the union of voxel boxes (voxel-centre covariance plus d²/12 per axis), so
    thin objects are not underestimated by one voxel.
``elongation``, ``flatness``
    major / middle and middle / minor axis length (both >= 1; 1 for a sphere).
``feret_um``
    Maximum Feret length: the largest distance between two points of the
    surface (pairs of convex-hull vertices, ``scipy.spatial.ConvexHull``).
``centroid_{x,y,z}_um``, ``extent_{x,y,z}_um``, ``z_min`` … ``x_max``, ``n_slices``
    Centre of mass, bounding-box size, bounding box (voxel indices, inclusive)
    and slices spanned.
``length_um``, ``branches`` (tubular classes only, mitochondria by default)
    From the 3-D skeleton (``skimage.morphology.skeletonize``) of the mask
    with its cavities filled and smoothed (Gaussian, 1.5 of the finest voxel side, threshold
    0.5, cavities filled again), so the roughness of a slice-by-slice
    segmentation does not sprout false branches. The skeleton
    voxels are joined to their 26 neighbours with edges of their physical
    length and reduced to a minimum spanning tree
    (``scipy.sparse.csgraph.minimum_spanning_tree``), which drops the
    redundant diagonal edges of staircase steps (loops are opened). The tree
    splits into *arms* at its junctions (voxels with three or more tree
    neighbours). ``length_um`` is the tree's length after Laplacian
    smoothing of the voxel positions (which removes the digital path's
    one-voxel zigzag) plus, at each end point, the distance to the surface
    along the skeleton's direction (thinning stops about one radius short
    of a tip). A *branch* is an arm: an unbranched skeleton (no junction)
    has ``branches = 0`` and a Y has 3. Terminal arms shorter than the
    tube's radius at their junction are bumps of the surface (spurs):
    removed before measuring and counting.
``nearest_<class>_um``
    Smallest distance between this organelle's surface and the surface of
    any organelle of ``<class>`` (for its own class: any *other* organelle
    of the class). Measured between marching-cubes surface vertices with
    ``scipy.spatial.cKDTree``, so touching organelles read ~0 and the value
    is a gap, not a distance between voxel centres. Empty where the class
    has no (other) organelle.
``touches_border``
    1 where the organelle touches a face of the stack: its measurements are
    partial.

Per class (``classes.csv``): count, count touching the border, total, mean,
median and quartile volume, volume fraction of the stack and of the ``cell``
class (where one exists), density (count per µm³ of stack and of cell),
median and quartiles of surface, sphericity, elongation and length.
"""

# Classes measured for skeleton length and branches. Here, not in
# morphometry, so that `famous --help` can show it without loading scipy.
TUBULAR_DEFAULT = ("mitochondria",)
