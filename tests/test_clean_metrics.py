"""Pure functions of isorobust.metrics.clean."""
import torch

from isorobust.metrics.clean import accuracy, logit_margin


def test_logit_margin_is_the_true_logit_minus_the_best_other():
    logits = torch.tensor([[3.0, 1.0, 2.0],    # right, runner-up 2.0
                           [0.5, 4.0, -1.0],   # wrong: label 0, class 1 wins
                           [1.0, 1.0, 0.0]])   # a tie with the label: margin 0, not counted as right
    labels = torch.tensor([0, 0, 1])
    assert torch.equal(logit_margin(logits, labels), torch.tensor([1.0, -3.5, 0.0]))
    # the label's own logit never counts as "the best other", however large it is
    assert logit_margin(torch.tensor([[100.0, -5.0]]), torch.tensor([0])).item() == 105.0


def test_logit_margin_is_positive_exactly_where_the_prediction_is_right():
    torch.manual_seed(0)
    logits, labels = torch.randn(500, 10), torch.randint(0, 10, (500,))
    right = logits.argmax(dim=1) == labels
    assert torch.equal(logit_margin(logits, labels) > 0, right)
    assert accuracy(logits.argmax(dim=1), labels) == right.float().mean().item()
