"""Networks behind one output contract (DESIGN.md): CMTNet, its ablation variants, baselines."""
