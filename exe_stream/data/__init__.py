"""Training data for the emotion models: stock photos found by emotion keywords, their faces,
and a cleaned, class-balanced set (issue 5).

One recipe (``training/recipes/*.toml``, read by ``exe_stream.data.recipe.load_recipe``)
drives every stage; each stage reads the previous stage's Arrow table in a data directory
``DATA`` and writes its own::

    DATA/raw/<source>-<id>.<ext>      downloaded images          exe_stream.data.pull
    DATA/raw.arrow                    one row per unique image   (exe-stream data pull)
    DATA/raw_duplicates.arrow         hits that repeated a kept image
    DATA/pull_state.json              per keyword and source: next page, why it stopped;
                                      images to try again
    DATA/faces/<label>/<hash>.png     face crops                 (exe-stream data extract)
    DATA/faces.arrow
    DATA/clean.arrow                  faces + keep/drop_reason   (exe-stream data clean)
    DATA/clean_report.json

The stages live in their own modules (``pull``, ``extract``, ``clean``); import them from
there. This package module imports nothing heavy.
"""
