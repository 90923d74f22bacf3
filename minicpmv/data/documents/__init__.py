"""The document data engine (training spec §3): pages with text regions, seeded region corruption at
three levels, region-addressed samples, a parallel resumable engine, evaluation and a preview sheet."""
