"""Source adapters: each one is a `minisigma.core.runner.Stage` writing Documents into <run>/sources/<name>/.

    arxiv          OAI-PMH metadata harvest by set and date window        (arxiv.py)
    ccf            CCF-ranked venues' papers from DBLP (search API or dump) (ccf.py)
    stackexchange  Stack Exchange dumps, questions joined with answers     (stackexchange.py)
    blogs          technical blogs crawled from their feeds and sitemaps   (blogs.py)
    localdocs      the embedded default corpus from Debian packages        (localdocs.py)

`categories.py` gives every document its weak system-domain label.
"""
