"""The parts of ``tools/ablate.py``: the paper's Table 1 and the settings that reproduce its rows
(``table1``), one seeded ``train_net.py`` run per setting and its recorded result (``runs``), and
the reports written from every recorded result (``reports``)."""
