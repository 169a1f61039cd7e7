"""Installs the recommender's packages and the `recsys` command.

Dependencies are pinned in requirements.lock (installed by `make`); the ranges here
only say what the code needs, so the lock stays the one source of exact versions.
"""
import setuptools

setuptools.setup(
    name="movielens-recsys",
    version="0.1.0",
    description="A TFX pipeline that predicts whether a user will like a movie.",
    python_requires=">=3.10,<3.11",
    packages=setuptools.find_packages(include=[
        "common*", "models*", "serving*", "export*", "evaluation*", "trainer*",
        "components*", "engines*", "pipeline*", "testing*"]),
    package_data={"pipeline": ["schema/*.pbtxt"], "engines": ["pins/*"]},
    install_requires=[
        "tfx==1.16.0",
        "tensorflow==2.16.2",
        "tf-keras==2.16.0",
        "tensorflow-recommenders==0.7.7",
        "tensorflow-datasets==4.9.10",
        "apache-beam[gcp]==2.59.0",
        "pandas",
    ],
    entry_points={"console_scripts": ["recsys = pipeline.cli:main"]},
)
