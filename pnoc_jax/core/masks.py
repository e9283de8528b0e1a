"""Label-map conventions shared by every stage: the ignore index and the VOC palette.

Label maps are uint8[H, W]: 0 background, 1..C the classes, `IGNORE` (255) for void or
uncertain pixels, which every loss and metric skips.
"""

import numpy as np

IGNORE = 255


def voc_palette(n: int = 256) -> np.ndarray:
    """The standard VOC colour map, uint8[n, 3]: the bits of index c spread over R, G and B.

    Index 0 is black, 1 (aeroplane) (128, 0, 0), 15 (person) (192, 128, 128), 255 (224, 224, 192).
    """
    palette = np.zeros((n, 3), np.uint8)
    for index in range(n):
        r = g = b = 0
        c = index
        for bit in range(8):
            r |= ((c >> 0) & 1) << (7 - bit)
            g |= ((c >> 1) & 1) << (7 - bit)
            b |= ((c >> 2) & 1) << (7 - bit)
            c >>= 3
        palette[index] = (r, g, b)
    return palette


PALETTE = voc_palette()
