"""The simulator's knobs, one module each. The core world (users, items, the ``first``,
``interest``, ``cross2`` and ``cross3`` terms, :class:`~ctrlib.data.simulator.WorldConfig` and
:class:`~ctrlib.data.simulator.CTRWorld`) lives in :mod:`ctrlib.data.simulator`; each knob adds a
structure on top of it, switched on by ``WorldConfig`` fields and off by default:

==========================  ========================================  ==================  ============
module                      knob (``WorldConfig``)                    oracle term          chapter
==========================  ========================================  ==================  ============
:mod:`.histories`           ``history_len``, ``history_match``        ``history``          user behaviour
:mod:`.scenarios`           ``scenario_groups``                       ``scenario``         APG
:mod:`.time_patterns`       ``time_interests``, ``time_events``       ``time``             Time Matters
:mod:`.actions`             ``action_types``                          (own sequences)      DFGR / HSTU
:mod:`.preranking`          :class:`~.preranking.PreRankingWorld`      ``brand``            TARQ
:mod:`.long_tail`           ``LongTailConfig`` (own world)            ``true_p`` (Bayes)   one-epoch
==========================  ========================================  ==================  ============

:mod:`.funnel` is a world of its own for the DHEN-for-CVR chapter (:class:`~.funnel.ConversionFunnel`:
click / add-to-cart / checkout with on-site and off-site sequences and the true probability of each
task; ``interactions=False`` is its control world), with its own generators.

Every knob draws from its own random generator, so switching one on leaves the default world's
numbers unchanged (``tests/test_world_checksums.py`` pins them).
"""
