"""Pure math: each op keeps a readable reference beside its fast forms, with one signature."""
