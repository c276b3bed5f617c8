"""Chunked nearest-neighbour searches agree with brute force, at any chunk size."""
import torch

from ubf.evaluation.neighbors import kth_neighbour_distance, l2_normalise, max_cosine, within_any_ball


def test_max_cosine_matches_brute_force_across_chunks():
    g = torch.Generator().manual_seed(0)
    queries, refs = torch.randn(37, 5, generator=g), torch.randn(53, 5, generator=g)
    full = l2_normalise(queries) @ l2_normalise(refs).T
    for chunk in (7, 16, 1000):
        value, index = max_cosine(queries, refs, chunk=chunk)
        assert torch.allclose(value, full.max(dim=1).values, atol=1e-6)
        assert torch.equal(index, full.argmax(dim=1))


def test_max_cosine_is_scale_invariant_and_one_for_members():
    refs = torch.rand(20, 8) + 0.1
    value, index = max_cosine(3.0 * refs[[4, 11]], refs, chunk=6)
    assert torch.allclose(value, torch.ones(2), atol=1e-6)
    assert index.tolist() == [4, 11]


def test_kth_neighbour_distance_matches_sorted_distances():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(41, 4, generator=g, dtype=torch.float64)
    d = torch.cdist(x, x)
    d.fill_diagonal_(float("inf"))
    for k in (1, 3):
        expected = d.sort(dim=1).values[:, k - 1]
        for chunk in (5, 64):
            assert torch.allclose(kth_neighbour_distance(x, k, chunk=chunk), expected, atol=1e-9)


def test_duplicates_are_neighbours_at_distance_zero():
    x = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, 4.0], [6.0, 8.0]])
    assert kth_neighbour_distance(x, 1, chunk=2).tolist() == [0.0, 0.0, 5.0, 5.0]


def test_within_any_ball_matches_brute_force():
    g = torch.Generator().manual_seed(2)
    queries, centres = torch.randn(30, 3, generator=g), torch.randn(25, 3, generator=g)
    radii = torch.rand(25, generator=g) * 1.2
    expected = (torch.cdist(queries.double(), centres.double()) <= radii.double()[None]).any(dim=1)
    for chunk in (4, 100):
        assert torch.equal(within_any_ball(queries, centres, radii, chunk=chunk), expected)
    # a query equal to a centre of radius 0 is inside it
    assert within_any_ball(centres[:1], centres[:1], torch.zeros(1)).item()
