"""The served models' contract: signature names, input and output keys, limits.

Shared by the exporter (`signatures.py`, `recommend.py`) and the client
(`client.py`), and importable without TensorFlow.
"""
SERVING_DEFAULT = "serving_default"  # serialized raw tf.Examples
PREDICT = "predict"  # user_id, movie_id; side features from the exported tables
PREDICT_RAW = "predict_raw"  # one tensor per raw feature the model uses
RECOMMEND = "recommend"  # user_id, k -> movie_ids, scores
# history, k -> movie_ids, scores: for a visitor in no table, from the movies they rated
RECOMMEND_FOR_HISTORY = "recommend_for_history"
TRANSFORM_FEATURES = "transform_features"  # for the Evaluator

EXAMPLES = "examples"
USER_ID = "user_id"
MOVIE_ID = "movie_id"
K = "k"
HISTORY = "history"  # [batch, length] movie ids, padded with "" (no movie)
LIKE_PROBABILITY = "like_probability"
ENGAGEMENT_SCORE = "engagement_score"  # the retrieval model's output: a logit, not a probability
MOVIE_IDS = "movie_ids"
SCORES = "scores"

MAX_K = 100  # the largest k a `recommend` request may ask for
GENRE_SEPARATOR = "|"  # predict_raw takes a movie's genres as one string
