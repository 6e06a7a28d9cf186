"""Several trainings in order from one command (`alignkit run`): a family's pipeline of stages (`spec`), a
scan's grid of points (`scan`), and planning, printing and running either one (`execute`). Light: no torch.
"""
