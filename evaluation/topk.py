"""Top-k metrics: how good the lists a recommender serves are, against each user's later likes.

For every user with at least one relevant movie (a held-out movie they liked),
the recommended list is compared with the relevant set:

- NDCG@k: sum over hits at rank i (1-based) of 1 / log2(i + 1), divided by the
  same sum for a perfect list (min(|relevant|, k) hits at the top);
- recall@k: hits / |relevant|;
- hit rate@k: 1 if the list has any hit;
- MAP@k: sum of precision@i at each hit rank i, divided by min(|relevant|, k);
- MRR@k: 1 / rank of the first hit, 0 without one;
averaged over those users, each mean with the half-width of its 95% confidence
interval over users (1.96 standard errors). Users without a relevant movie cannot
score and are counted apart. Over all lists: catalogue coverage (the share of the catalogue
recommended to anyone) and the share of recommendations the user had already
rated (a recommender must never serve those).

Rankings computed here from scores break ties by the lower movie index, so the
same scores always give the same list.
"""
import dataclasses
from typing import Dict, List, Optional, Sequence, Set

import numpy as np
from scipy.linalg import lapack

K = 10  # the cut-off the report and the blessing lead with
CURVE_KS = tuple(range(1, 51))  # NDCG@k and recall@k are drawn for these k
METRICS = ("ndcg", "recall", "hit_rate", "map", "mrr")
NORMAL_95 = 1.96  # standard errors either side of a mean: its 95% confidence interval


def _discounts(k: int) -> np.ndarray:
  return 1.0 / np.log2(np.arange(2, k + 2))


@dataclasses.dataclass
class TopKResult:
  """Metrics of one recommender's lists, averaged over users with something relevant."""
  k: int
  metrics: Dict[str, float]  # name@k -> mean over scored users
  confidence_95: Dict[str, float]  # name@k -> half-width of its 95% confidence interval
  curves: Dict[str, List[float]]  # "ndcg" / "recall" -> value at each of CURVE_KS
  users_scored: int
  users_without_relevant: int
  coverage: float
  already_rated_share: float

  def to_json(self) -> Dict:
    return dataclasses.asdict(self)


def evaluate_lists(recommended: Sequence[Sequence[int]], relevant: Sequence[Set[int]],
                   catalogue_size: int, already_rated: Optional[Sequence[Set[int]]] = None,
                   k: int = K, curve_ks: Sequence[int] = CURVE_KS) -> TopKResult:
  """Metrics of ranked lists of movie indices, one list and one relevant set per user.

  Lists may be longer than k (the curves read up to max(curve_ks)); only their
  first k count for the metrics at k, coverage and already-rated share.
  """
  if len(recommended) != len(relevant):
    raise ValueError(f"{len(recommended)} lists for {len(relevant)} users")
  depth = max([k, *curve_ks])
  discounts = _discounts(depth)
  totals = {name: 0.0 for name in METRICS}
  squares = {name: 0.0 for name in METRICS}
  curves = {"ndcg": np.zeros(len(curve_ks)), "recall": np.zeros(len(curve_ks))}
  scored = without = served = rated_served = 0
  shown: Set[int] = set()
  for user, (ranked, wanted) in enumerate(zip(recommended, relevant)):
    ranked = list(ranked)[:depth]
    top = ranked[:k]
    shown.update(top)
    served += len(top)
    if already_rated is not None:
      rated_served += sum(movie in already_rated[user] for movie in top)
    if not wanted:
      without += 1
      continue
    scored += 1
    hits = np.array([movie in wanted for movie in ranked] + [False] * (depth - len(ranked)))
    ideal = np.cumsum(discounts[:min(len(wanted), depth)])
    gains = np.cumsum(hits * discounts)
    at = np.array(curve_ks) - 1
    curves["ndcg"] += gains[at] / ideal[np.minimum(at, len(ideal) - 1)]
    curves["recall"] += np.cumsum(hits)[at] / len(wanted)
    first_k = hits[:k]
    ranks = np.flatnonzero(first_k) + 1
    user_values = {
        "ndcg": gains[k - 1] / ideal[min(k, len(ideal)) - 1],
        "recall": first_k.sum() / len(wanted),
        "hit_rate": float(first_k.any()),
        "map": (np.arange(1, len(ranks) + 1) / ranks).sum() / min(len(wanted), k),
        "mrr": 1.0 / ranks[0] if len(ranks) else 0.0}
    for name, value in user_values.items():
      totals[name] += value
      squares[name] += value * value

  def mean(total):
    return float(total / scored) if scored else 0.0

  def half_width(name):
    if scored < 2:
      return 0.0
    variance = max(squares[name] - totals[name] ** 2 / scored, 0.0) / (scored - 1)
    return float(NORMAL_95 * np.sqrt(variance / scored))

  return TopKResult(
      k=k, metrics={f"{name}@{k}": mean(total) for name, total in totals.items()},
      confidence_95={f"{name}@{k}": half_width(name) for name in METRICS},
      curves={name: [mean(v) for v in values] for name, values in curves.items()},
      users_scored=scored, users_without_relevant=without,
      coverage=len(shown) / catalogue_size if catalogue_size else 0.0,
      already_rated_share=rated_served / served if served else 0.0)


def rank(scores: np.ndarray, excluded: np.ndarray, k: int) -> np.ndarray:
  """The k best columns of each row of `scores` [users, movies], excluded ones left out.

  Best first; equal scores go by the lower column. A row with fewer than k
  columns left is padded with -1.
  """
  scores = np.where(excluded, -np.inf, scores.astype(np.float64))
  order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
  return np.where(np.take_along_axis(scores, order, axis=1) == -np.inf, -1, order)


def popularity_scores(users: np.ndarray, movies: np.ndarray, likes: np.ndarray,
                      num_movies: int) -> np.ndarray:
  """Per movie, how many users liked it: "most liked" ranks every user's list alike."""
  del users
  return np.bincount(movies, weights=likes.astype(np.float64), minlength=num_movies)


def interactions(users: np.ndarray, movies: np.ndarray, num_users: int,
                 num_movies: int) -> np.ndarray:
  """The users x movies matrix X of who rated what: 1 where a user rated a movie."""
  matrix = np.zeros((num_users, num_movies), np.float32)
  matrix[users, movies] = 1.0
  return matrix


def ease_weights(gram: np.ndarray, l2: float = 300.0) -> np.ndarray:
  """EASE (Steck, 2019): an item-item model in closed form over who rated what.

  With `gram` = X'X of the interaction matrix X: B = I - P / diag(P) with
  P = (X'X + l2 I)^-1 and a zero diagonal. A user's scores are their row of X
  times B.

  X'X + l2 I is symmetric positive definite, so P comes from its Cholesky factor,
  in float32: under half the time of a general float64 inverse on MovieLens-1M's
  catalogue, which RankingEvaluator pays five times per run, with the same top-10
  lists (docs/evaluation.md#top-k-lists-what-a-user-is-served).
  """
  regularized = gram.astype(np.float32)
  regularized[np.diag_indices(len(gram))] += l2
  factor, info = lapack.spotrf(regularized, lower=1, overwrite_a=1, clean=0)
  if info == 0:
    inverse, info = lapack.spotri(factor, lower=1, overwrite_c=1)
  if info != 0:
    raise np.linalg.LinAlgError(f"X'X + {l2:g} I is not positive definite (LAPACK info {info})")
  inverse = np.tril(inverse) + np.tril(inverse, -1).T  # spotri fills the lower triangle
  weights = -inverse / np.diag(inverse)
  weights[np.diag_indices(len(gram))] = 0.0
  return weights
