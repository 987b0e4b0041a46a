# expect: forbidden
# a top-level import
import os


def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    return update, var1, var2
