"""Analysis layer: passes over a whole catalog (evaluate, cluster, duplicates, recommend). Uses catalogs;
draws nothing (figures/ does)."""
