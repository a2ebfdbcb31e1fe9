import torch

from segmenters.base import soft_dice_loss


def test_soft_dice_is_zero_for_a_confident_perfect_map_and_one_for_a_disjoint_one():
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[0, 2:5, 2:5] = 1
    perfect = torch.stack([-20 * (masks * 2 - 1).float(), 20 * (masks * 2 - 1).float()], 1)
    assert soft_dice_loss(perfect, masks, eps=0.0) < 1e-6
    assert soft_dice_loss(-perfect, masks, eps=0.0) > 1 - 1e-6
    # undecided everywhere: Dice = 2 * 0.5 * 9 / (0.5 * 128 + 9)
    undecided = torch.zeros(2, 2, 8, 8)
    assert torch.isclose(soft_dice_loss(undecided, masks, eps=0.0), torch.tensor(1 - 9 / 73), atol=1e-6)
