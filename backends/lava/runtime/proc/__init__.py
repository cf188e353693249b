"""spikec's Lava processes, one folder each (``process.py`` + ``models.py``), as in Lava's own
``lava.proc`` library.

Lava finds a process's models by executing every module in the process's folder, each as
a standalone file; these modules therefore import absolutely (``from runtime.proc...``),
which needs the folder holding ``runtime`` on ``sys.path`` (``run_lava.py`` puts it there).
The models are chosen by their tags (``floating_pt`` / ``fixed_pt``) through the run config.
"""
