# expect: forbidden
# in-place item assignment on a JAX array
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    update[0] = 0.0
    return update, var1, var2
