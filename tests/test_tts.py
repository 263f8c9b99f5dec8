"""Test-time scaling's pure parts: step labels of mini-lab solutions, self-consistency, best-of-N and the disjoint
groups behind accuracy at N, checked on hand-made cases."""

from __future__ import annotations

import pytest

from mixtune.analysis.tts import (
    auroc,
    best_of_n,
    gold_equations,
    groups_of,
    majority_vote,
    pick_by_scores,
    powers_of_two,
    selection_accuracy,
    step_labels,
    weighted_vote,
    within_problem_auroc,
)

GOLD = "2 * 9 = 18\n18 + 40 = 58\n58 / 2 = 29\n#### 29"


def test_gold_equations_parse_the_reference():
    assert gold_equations(GOLD) == ([(2, "*", 9), (18, "+", 40), (58, "/", 2)], "29")


@pytest.mark.parametrize("solution, gold_labels, arithmetic_labels", [
    (GOLD, [True] * 4, [True] * 4),
    # an arithmetic slip in step 2: it and everything after it are wrong in both modes
    ("2 * 9 = 18\n18 + 40 = 57\n57 / 2 = 28\n#### 28", [True, False, False, False], [True, False, False, False]),
    # right arithmetic on a wrong number (41 is not in the problem): wrong in gold mode only
    ("2 * 9 = 18\n18 + 41 = 59\n#### 59", [True, False, False], [True, True, True]),
    # the division is not exact: wrong
    ("2 * 9 = 18\n18 + 40 = 58\n58 / 4 = 14\n#### 14", [True, True, False, False], [True, True, False, False]),
    # a step missing: the final answer comes too early
    ("2 * 9 = 18\n18 + 40 = 58\n#### 58", [True, True, False], [True, True, True]),
    # a final answer that is not the last result; chatter is a wrong step
    ("2 * 9 = 18\n#### 19", [True, False], [True, False]),
    ("the answer\n#### 29", [False, False], [False, False]),
])
def test_step_labels_by_recomputation(solution, gold_labels, arithmetic_labels):
    assert step_labels(solution, GOLD, "gold") == gold_labels
    assert step_labels(solution, None, "arithmetic") == arithmetic_labels


def test_step_labels_need_the_gold_in_gold_mode():
    with pytest.raises(ValueError, match="reference"):
        step_labels(GOLD, None, "gold")


def test_majority_vote_counts_valid_answers_and_breaks_ties_by_order():
    samples = ["1 + 1 = 2\n#### 2", "#### 3", "no answer", "#### 3", "#### 2"]
    assert majority_vote(samples) == 0  # 2 and 3 tie at two votes each; 2 was reached first
    assert majority_vote(samples[1:]) == 0  # 3 (index 0 and 2 of the rest) beats 2
    assert majority_vote(["#### 1,000", "#### 1000.", "#### 7"]) == 0  # normalised as lm-eval: 1,000 == 1000.
    assert majority_vote(["x", "y"]) == 0


def test_best_of_n_takes_the_first_highest():
    assert best_of_n([0.2, 0.9, 0.9, 0.1]) == 1


def test_selection_accuracy_over_disjoint_groups():
    # one problem, 4 samples: correct = [F, T, F, F]; scores favour sample 1 only within its group
    correct = [[False, True, False, False]]
    scores = [[0.5, 0.4, 0.9, 0.1]]
    pick = (lambda p, idx: idx[best_of_n([scores[p][i] for i in idx])])
    assert groups_of(4, 2) == [range(2), range(2, 4)]
    assert selection_accuracy(correct, pick, 1) == 0.25  # each sample alone: 1 of 4 right
    assert selection_accuracy(correct, pick, 2) == 0.0  # group {0,1} picks 0 (0.5 > 0.4), group {2,3} picks 2
    assert selection_accuracy(correct, pick, 4) == 0.0  # picks 2
    oracle = (lambda p, idx: next((i for i in idx if correct[p][i]), idx[0]))
    assert [selection_accuracy(correct, oracle, n) for n in (1, 2, 4)] == [0.25, 0.5, 1.0]
    assert powers_of_two(8) == [1, 2, 4, 8]
    with pytest.raises(ValueError, match="power of two"):
        powers_of_two(6)


def test_auroc_by_hand():
    # positives 0.9, 0.4; negatives 0.5, 0.4: pairs (0.9>0.5) 1, (0.9>0.4) 1, (0.4<0.5) 0, (0.4=0.4) ½ → 2.5 / 4
    assert auroc([0.9, 0.5, 0.4, 0.4], [True, False, True, False]) == 0.625
    assert auroc([0.1, 0.2], [True, True]) != auroc([0.1, 0.2], [True, True])  # NaN: no negative


def test_best_of_n_among_answered_samples_and_weighted_vote():
    completions = [["5 * 2 = 10.", "5 * 2 = 10\n#### 10", "#### 11"]]
    scores = [[0.99, 0.60, 0.70]]
    assert pick_by_scores(scores)(0, [0, 1, 2]) == 0  # plain best-of-N takes the unfinished sample
    assert pick_by_scores(scores, completions)(0, [0, 1, 2]) == 2  # among answered ones: 0.70 > 0.60
    assert pick_by_scores(scores, completions)(0, [0]) == 0  # nobody answers: the best of all
    # answers 10, 11, 10 with scores 0.3, 0.5, 0.3: 10 sums to 0.6 > 0.5 (plain best-of-N would say 11)
    assert weighted_vote(["#### 10", "#### 11", "x\n#### 10"], [0.3, 0.5, 0.3]) == 0
    assert weighted_vote(["#### 10", "#### 11", "x\n#### 10"], [0.1, 0.5, 0.3]) == 1
    assert weighted_vote(["a", "b"], [0.9, 0.1]) == 0


def test_within_problem_auroc_ignores_telling_problems_apart():
    # problem 0 scores high, problem 1 low: pooled, problem 0's right answer (0.9) and problem 2's (0.5) beating
    # problem 1's wrong one (0.2) count; within each problem the wrong sample outscores the right one (best-of-N
    # always picks wrong): 0.
    scores = [[0.9, 0.95], [0.1, 0.2], [0.5, 0.5]]
    correct = [[True, False], [True, False], [True, True]]  # problem 2 has no wrong sample: left out
    pooled = auroc([x for s in scores for x in s], [c for cs in correct for c in cs])
    assert pooled == 3 / 8  # positives .9 .1 .5 .5 vs negatives .95 .2: (.9 > .2), (.5 > .2) twice
    assert within_problem_auroc(scores, correct) == 0.0
    assert within_problem_auroc([[0.3, 0.1]], [[True, False]]) == 1.0
    assert within_problem_auroc([[0.3]], [[True]]) != within_problem_auroc([[0.3]], [[True]])  # NaN
