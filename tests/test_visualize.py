"""Contour drawing, perturbation amplification and panels."""

import numpy as np
import pytest
import torch

from diskrobust.visualize import COLORS, amplify_perturbation, draw_contours, side_by_side, to_rgb


def test_to_rgb_accepts_tensor_and_channel_axis():
    img = torch.linspace(0, 1, 20).reshape(1, 4, 5)
    rgb = to_rgb(img)
    assert rgb.shape == (3, 4, 5) and rgb.dtype == np.float32
    assert np.allclose(rgb[0], img[0].numpy()) and np.allclose(rgb[0], rgb[2])
    with pytest.raises(ValueError, match="grey image"):
        to_rgb(np.zeros((2, 4, 5)))


def test_square_contour_pixels_change_colour_and_others_do_not():
    image = np.full((20, 20), 0.3, np.float32)
    square = np.array([[5, 5], [5, 12], [12, 12], [12, 5]], float)  # (x, y)
    out = draw_contours(image, [square], [COLORS["pred"]], mark_first=False)
    assert out.shape == (3, 20, 20)
    red = np.all(out == np.array(COLORS["pred"], np.float32)[:, None, None], axis=0)
    expected = np.zeros((20, 20), bool)
    expected[5, 5:13] = expected[12, 5:13] = True  # rows y = 5 and 12
    expected[5:13, 5] = expected[5:13, 12] = True  # cols x = 5 and 12
    assert np.array_equal(red, expected)
    # every other pixel keeps the grey value
    assert np.allclose(out[:, ~expected], 0.3)
    # the input was not modified
    assert np.all(image == np.float32(0.3))


def test_x_is_column_y_is_row():
    image = np.zeros((30, 10))
    line = np.array([[2, 20], [7, 20]], float)  # horizontal segment at row 20, cols 2..7
    out = draw_contours(image, [line], [(1, 1, 1)], mark_first=False)
    assert out[:, 20, 2:8].min() == 1.0
    assert out.sum() == pytest.approx(3 * 6)


def test_first_point_is_marked():
    image = np.zeros((20, 20))
    square = np.array([[5, 5], [5, 12], [12, 12], [12, 5]], float)
    plain = draw_contours(image, [square], [(1, 1, 1)], mark_first=False)
    marked = draw_contours(image, [square], [(1, 1, 1)], mark_first=True)
    added = (marked.sum(0) > 0) & (plain.sum(0) == 0)
    assert added.any()
    rows, cols = np.nonzero(added)
    # the extra pixels sit next to point 0 (x=5, y=5), inside the 1.5 px dot
    assert np.all(np.hypot(rows - 5, cols - 5) <= 1.5)
    assert added[6, 6]


def test_contour_partly_outside_is_clipped_and_later_contours_draw_on_top():
    image = np.zeros((16, 16))
    outside = np.array([[-10, -10], [-10, 8], [8, 8], [8, -10]], float)
    inner = np.array([[8, 8], [8, 14], [14, 14], [14, 8]], float)  # shares the corner (8, 8)
    out = draw_contours(image, [outside, inner], [COLORS["truth"], COLORS["attacked"]], mark_first=False)
    assert out.shape == (3, 16, 16)
    green = np.all(out == np.array(COLORS["truth"], np.float32)[:, None, None], axis=0)
    # only the two edges that cross the image show: row 8 (cols 0..7) and col 8 (rows 0..7)
    expected = np.zeros((16, 16), bool)
    expected[8, 0:8] = expected[0:8, 8] = True
    assert np.array_equal(green, expected)
    # the shared corner is drawn in the later colour
    assert np.allclose(out[:, 8, 8], COLORS["attacked"])


def test_degenerate_and_far_away_contours():
    image = np.zeros((16, 16))
    collapsed = np.full((176, 2), 4.0)  # every point at (4, 4)
    out = draw_contours(image, [collapsed], [(1, 1, 1)], mark_first=False)
    assert out.sum(0)[4, 4] == 3 and out.sum() == 3
    far = np.array([[1e6, 1e6], [1e6 + 5, 1e6], [1e6, 1e6 + 5]])
    assert draw_contours(image, [far], [(1, 1, 1)]).sum() == 0
    # a huge triangle whose edge crosses the image still draws its visible part (the diagonal)
    crossing = np.array([[-1e5, -1e5], [1e5, 1e5], [-1e5, 1e5]])
    out = draw_contours(image, [crossing], [(1, 1, 1)], mark_first=False)
    assert all(out[0, i, i] == 1 for i in range(16))


def test_draw_contours_validates_input():
    image = np.zeros((8, 8))
    with pytest.raises(ValueError, match="colours"):
        draw_contours(image, [np.zeros((4, 2))], [])
    with pytest.raises(ValueError, match="NaN"):
        draw_contours(image, [np.full((4, 2), np.nan)], [(1, 0, 0)])
    with pytest.raises(ValueError, match=r"\(N >= 2, 2\)"):
        draw_contours(image, [np.zeros((4, 3))], [(1, 0, 0)])


def test_amplify_perturbation_diverging_and_scale():
    delta = np.zeros((4, 6))
    delta[0, 0] = 0.02
    delta[1, 1] = -0.01
    img, scale = amplify_perturbation(torch.tensor(delta))
    assert img.shape == (3, 4, 6) and img.dtype == np.float32
    assert scale == pytest.approx(50.0)
    assert 0.0 <= img.min() and img.max() <= 1.0
    zero, pos, neg = img[:, 3, 3], img[:, 0, 0], img[:, 1, 1]
    assert np.all(zero > 0.9)  # white at zero
    assert pos[0] > pos[1] + 0.3 and pos[0] > pos[2] + 0.2  # red for positive
    assert neg[2] > neg[0] + 0.2  # blue for negative
    flat, flat_scale = amplify_perturbation(np.zeros((3, 3)))
    assert flat_scale == 1.0 and np.allclose(flat, flat[:, :1, :1])


def test_side_by_side():
    a = np.zeros((3, 4, 5), np.float32)
    b = np.ones((3, 4, 5), np.float32)
    out = side_by_side([a, torch.from_numpy(b)])
    assert out.shape == (3, 4, 10)
    assert out[:, :, :5].max() == 0 and out[:, :, 5:].min() == 1
    with pytest.raises(ValueError, match="height"):
        side_by_side([a, np.zeros((3, 5, 5))])
    with pytest.raises(ValueError, match="no images"):
        side_by_side([])
