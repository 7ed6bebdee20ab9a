"""Class names, palettes and label-id tables of the supported datasets.

These are facts taken from each dataset's own definition (Cityscapes' ``labels.py``, the
PASCAL VOC devkit colour map, the SegNet CamVid colours, the ADE20K SceneParsing ``objectInfo150``
list, the COCO-Stuff label list). Where a dataset ships no palette (Pascal Context, ADE20K,
COCO-Stuff) we use the one mmsegmentation made the de-facto standard, so our visualisations match
published ones.
"""

from __future__ import annotations

import numpy as np

RGB = tuple[int, int, int]


def _triplets(flat: tuple[int, ...]) -> tuple[RGB, ...]:
    # Palettes are written flat to keep this file short; regroup them into (r, g, b).
    if len(flat) % 3:
        raise ValueError("a flat palette needs a multiple of 3 values")
    return tuple((flat[i], flat[i + 1], flat[i + 2]) for i in range(0, len(flat), 3))


def voc_colormap(n: int = 256) -> tuple[RGB, ...]:
    """The PASCAL VOC devkit colour map: bit j of each RGB channel holds bits 3j..3j+2 of the index.

    Args:
        n: Number of colours to generate.

    Returns:
        ``n`` RGB triplets; index 0 is black, index 255 is the VOC boundary colour.
    """
    colours = []
    for index in range(n):
        rgb = [0, 0, 0]
        code = index
        for bit in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= ((code >> channel) & 1) << bit
            code >>= 3
        colours.append((rgb[0], rgb[1], rgb[2]))
    return tuple(colours)


# --- ADE20K (SceneParsing, 150 classes; 0 = "other" is removed by reduce-zero-label) -------------
ADE20K_CLASSES: tuple[str, ...] = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass",
    "cabinet", "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain",
    "chair", "car", "water", "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field",
    "armchair", "seat", "fence", "desk", "rock", "wardrobe", "lamp", "bathtub", "railing",
    "cushion", "base", "box", "column", "signboard", "chest of drawers", "counter", "sand", "sink",
    "skyscraper", "fireplace", "refrigerator", "grandstand", "path", "stairs", "runway", "case",
    "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase", "blind",
    "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus",
    "towel", "light", "truck", "tower", "chandelier", "awning", "streetlight", "booth",
    "television receiver", "airplane", "dirt track", "apparel", "pole", "land", "bannister",
    "escalator", "ottoman", "bottle", "buffet", "poster", "stage", "van", "ship", "fountain",
    "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool", "barrel", "basket",
    "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen",
    "blanket", "sculpture", "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan",
    "pier", "crt screen", "plate", "monitor", "bulletin board", "shower", "radiator", "glass",
    "clock", "flag",
)  # fmt: skip
ADE20K_PALETTE: tuple[RGB, ...] = _triplets((
    120, 120, 120, 180, 120, 120, 6, 230, 230, 80, 50, 50, 4, 200, 3, 120, 120, 80, 140, 140, 140,
    204, 5, 255, 230, 230, 230, 4, 250, 7, 224, 5, 255, 235, 255, 7, 150, 5, 61, 120, 120, 70,
    8, 255, 51, 255, 6, 82, 143, 255, 140, 204, 255, 4, 255, 51, 7, 204, 70, 3, 0, 102, 200,
    61, 230, 250, 255, 6, 51, 11, 102, 255, 255, 7, 71, 255, 9, 224, 9, 7, 230, 220, 220, 220,
    255, 9, 92, 112, 9, 255, 8, 255, 214, 7, 255, 224, 255, 184, 6, 10, 255, 71, 255, 41, 10,
    7, 255, 255, 224, 255, 8, 102, 8, 255, 255, 61, 6, 255, 194, 7, 255, 122, 8, 0, 255, 20,
    255, 8, 41, 255, 5, 153, 6, 51, 255, 235, 12, 255, 160, 150, 20, 0, 163, 255, 140, 140, 140,
    250, 10, 15, 20, 255, 0, 31, 255, 0, 255, 31, 0, 255, 224, 0, 153, 255, 0, 0, 0, 255,
    255, 71, 0, 0, 235, 255, 0, 173, 255, 31, 0, 255, 11, 200, 200, 255, 82, 0, 0, 255, 245,
    0, 61, 255, 0, 255, 112, 0, 255, 133, 255, 0, 0, 255, 163, 0, 255, 102, 0, 194, 255, 0,
    0, 143, 255, 51, 255, 0, 0, 82, 255, 0, 255, 41, 0, 255, 173, 10, 0, 255, 173, 255, 0,
    0, 255, 153, 255, 92, 0, 255, 0, 255, 255, 0, 245, 255, 0, 102, 255, 173, 0, 255, 0, 20,
    255, 184, 184, 0, 31, 255, 0, 255, 61, 0, 71, 255, 255, 0, 204, 0, 255, 194, 0, 255, 82,
    0, 10, 255, 0, 112, 255, 51, 0, 255, 0, 194, 255, 0, 122, 255, 0, 255, 163, 255, 153, 0,
    0, 255, 10, 255, 112, 0, 143, 255, 0, 82, 0, 255, 163, 255, 0, 255, 235, 0, 8, 184, 170,
    133, 0, 255, 0, 255, 92, 184, 0, 255, 255, 0, 31, 0, 184, 255, 0, 214, 255, 255, 0, 112,
    92, 255, 0, 0, 224, 255, 112, 224, 255, 70, 184, 160, 163, 0, 255, 153, 0, 255, 71, 255, 0,
    255, 0, 163, 255, 204, 0, 255, 0, 143, 0, 255, 235, 133, 255, 0, 255, 0, 235, 245, 0, 255,
    255, 0, 122, 255, 245, 0, 10, 190, 212, 214, 255, 0, 0, 204, 255, 20, 0, 255, 255, 255, 0,
    0, 153, 255, 0, 41, 255, 0, 255, 204, 41, 0, 255, 41, 255, 0, 173, 0, 255, 0, 245, 255,
    71, 0, 255, 122, 0, 255, 0, 255, 184, 0, 92, 255, 184, 255, 0, 0, 133, 255, 255, 214, 0,
    25, 194, 194, 102, 255, 0, 92, 0, 255,
))  # fmt: skip

# --- Pascal Context 59 (labels 1..59 of SegmentationClassContext, 0 = background -> ignore) -----
PASCAL_CONTEXT_CLASSES: tuple[str, ...] = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)  # fmt: skip
# mmsegmentation colours Pascal Context 59 with entries 1..59 of the ADE20K palette.
PASCAL_CONTEXT_PALETTE: tuple[RGB, ...] = ADE20K_PALETTE[1:60]

# --- COCO-Stuff 164k (171 used classes, train ids 0..170) ----------------------------------------
COCO_STUFF_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich", "orange",
    "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch", "potted plant",
    "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors",
    "teddy bear", "hair drier", "toothbrush", "banner", "blanket", "branch", "bridge",
    "building-other", "bush", "cabinet", "cage", "cardboard", "carpet", "ceiling-other",
    "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain", "desk-stuff",
    "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel",
    "ground-other", "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss",
    "mountain", "mud", "napkin", "net", "paper", "pavement", "pillow", "plant-other", "plastic",
    "platform", "playingfield", "railing", "railroad", "river", "road", "rock", "roof", "rug",
    "salad", "sand", "sea", "shelf", "sky-other", "skyscraper", "snow", "solid-other", "stairs",
    "stone", "straw", "structural-other", "table", "tent", "textile-other", "towel", "tree",
    "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel", "wall-stone",
    "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)  # fmt: skip
COCO_STUFF_PALETTE: tuple[RGB, ...] = _triplets((
    0, 192, 64, 0, 192, 64, 0, 64, 96, 128, 192, 192, 0, 64, 64, 0, 192, 224, 0, 192, 192,
    128, 192, 64, 0, 192, 96, 128, 192, 64, 128, 32, 192, 0, 0, 224, 0, 0, 64, 0, 160, 192,
    128, 0, 96, 128, 0, 192, 0, 32, 192, 128, 128, 224, 0, 0, 192, 128, 160, 192, 128, 128, 0,
    128, 0, 32, 128, 32, 0, 128, 0, 128, 64, 128, 32, 0, 160, 0, 0, 0, 0, 192, 128, 160,
    0, 32, 0, 0, 128, 128, 64, 128, 160, 128, 160, 0, 0, 128, 0, 192, 128, 32, 128, 96, 128,
    0, 0, 128, 64, 0, 32, 0, 224, 128, 128, 0, 0, 192, 0, 160, 0, 96, 128, 128, 128, 128,
    64, 0, 160, 128, 224, 128, 128, 128, 64, 192, 0, 32, 128, 96, 0, 128, 0, 192, 0, 128, 32,
    64, 224, 0, 0, 0, 64, 128, 128, 160, 64, 96, 0, 0, 128, 192, 0, 128, 160, 192, 224, 0,
    0, 128, 64, 128, 128, 32, 192, 32, 128, 0, 64, 192, 0, 0, 32, 64, 160, 128, 128, 64, 64,
    128, 0, 160, 64, 32, 128, 128, 192, 192, 0, 0, 160, 192, 160, 128, 128, 192, 0, 128, 0, 96,
    192, 32, 0, 128, 64, 128, 64, 128, 96, 64, 160, 0, 0, 64, 0, 192, 128, 224, 64, 32, 0,
    0, 192, 128, 64, 128, 224, 192, 160, 0, 0, 192, 0, 192, 128, 96, 192, 96, 128, 0, 64, 128,
    64, 0, 96, 64, 224, 128, 128, 64, 0, 192, 0, 224, 64, 96, 128, 128, 192, 128, 64, 0, 224,
    192, 224, 128, 128, 192, 64, 192, 0, 96, 192, 96, 0, 128, 64, 192, 0, 128, 96, 0, 224, 0,
    64, 64, 64, 128, 128, 224, 0, 96, 0, 64, 192, 192, 0, 128, 224, 128, 224, 0, 64, 192, 64,
    128, 128, 96, 128, 32, 128, 64, 0, 192, 0, 64, 96, 0, 160, 128, 192, 0, 64, 128, 64, 224,
    0, 32, 128, 192, 128, 192, 0, 64, 224, 128, 160, 128, 192, 128, 0, 128, 64, 32, 128, 32, 64,
    192, 0, 128, 64, 192, 32, 0, 160, 64, 64, 0, 0, 192, 192, 160, 0, 32, 64, 64, 128, 128,
    64, 192, 160, 128, 160, 64, 64, 128, 0, 192, 192, 32, 128, 96, 192, 64, 0, 128, 64, 64, 32,
    0, 224, 192, 192, 0, 0, 192, 64, 160, 0, 96, 192, 192, 128, 128, 64, 64, 160, 128, 224, 192,
    192, 128, 64, 192, 64, 32, 128, 96, 64, 192, 0, 192, 0, 192, 32, 64, 224, 64, 64, 0, 64,
    128, 192, 160, 64, 96, 64, 64, 128, 192, 0, 192, 160, 192, 224, 64, 64, 128, 64, 128, 192, 32,
    192, 32, 192, 64, 64, 192, 0, 64, 32, 64, 160, 192, 192, 64, 64, 128, 64, 160, 64, 32, 192,
    192, 192, 192, 0, 64, 160, 192, 160, 192, 192, 192, 0, 128, 64, 96, 192, 32, 64, 192, 64, 128,
    64, 192, 96, 64, 160, 64, 64, 64, 0,
))  # fmt: skip
# Raw COCO-Stuff maps hold (COCO category id - 1) in 0..181; these ids name no category.
COCO_STUFF_UNUSED_IDS: tuple[int, ...] = (11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90)

# --- Cityscapes (19 evaluated classes, official trainIds) ----------------------------------------
CITYSCAPES_CLASSES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle",
    "bicycle",
)  # fmt: skip
CITYSCAPES_PALETTE: tuple[RGB, ...] = _triplets((
    128, 64, 128, 244, 35, 232, 70, 70, 70, 102, 102, 156, 190, 153, 153, 153, 153, 153,
    250, 170, 30, 220, 220, 0, 107, 142, 35, 152, 251, 152, 70, 130, 180, 220, 20, 60, 255, 0, 0,
    0, 0, 142, 0, 0, 70, 0, 60, 100, 0, 80, 100, 0, 0, 230, 119, 11, 32,
))  # fmt: skip
# labelId -> trainId for the ids that are evaluated; every other id in 0..33 (and 255, where the
# license plate's id -1 lands in uint8) is ignored.
CITYSCAPES_ID_TO_TRAIN_ID: dict[int, int] = {
    7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12,
    26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18,
}  # fmt: skip
CITYSCAPES_NUM_IDS = 34

# --- PASCAL VOC 2012 (21 classes incl. background; 255 = object boundary -> ignore) --------------
VOC_CLASSES: tuple[str, ...] = (
    "background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
    "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
)  # fmt: skip
VOC_PALETTE: tuple[RGB, ...] = voc_colormap(len(VOC_CLASSES))

# --- CamVid, SegNet 11-class split (label 11 = Unlabelled -> ignore) ----------------------------
CAMVID_CLASSES: tuple[str, ...] = (
    "Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car",
    "Pedestrian", "Bicyclist",
)  # fmt: skip
CAMVID_PALETTE: tuple[RGB, ...] = _triplets((
    128, 128, 128, 128, 0, 0, 192, 192, 128, 128, 64, 128, 60, 40, 222, 128, 128, 0,
    192, 128, 128, 64, 64, 128, 64, 0, 128, 64, 64, 0, 0, 128, 192,
))  # fmt: skip
CAMVID_VOID_ID = 11


def coco_stuff_raw_to_train_lut() -> np.ndarray:
    """Look-up table from raw COCO-Stuff ids to the 171 train ids.

    Returns:
        int16 array of 256 entries: raw ids 0..181 map to 0..170 in order with the unused ids
        mapped to 255 (as mmsegmentation's converter does), 255 stays 255, and -1 marks values that
        no COCO-Stuff map may contain (182..254).
    """
    lut = np.full(256, -1, dtype=np.int16)
    unused = set(COCO_STUFF_UNUSED_IDS)
    train_id = 0
    for raw in range(182):
        if raw in unused:
            lut[raw] = 255
        else:
            lut[raw] = train_id
            train_id += 1
    lut[255] = 255
    return lut


def cityscapes_id_to_train_lut() -> np.ndarray:
    """Look-up table from Cityscapes ``labelIds`` to ``trainIds``.

    Returns:
        int16 array of 256 entries: ids 0..33 map per the official table (non-evaluated ids to
        255), 255 stays 255, and -1 marks values no ``labelIds`` image may contain.
    """
    lut = np.full(256, -1, dtype=np.int16)
    lut[:CITYSCAPES_NUM_IDS] = 255
    for label_id, train_id in CITYSCAPES_ID_TO_TRAIN_ID.items():
        lut[label_id] = train_id
    lut[255] = 255
    return lut
