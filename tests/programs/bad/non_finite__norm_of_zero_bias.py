# expect: non_finite
# relative to the bias norm: biases start at zero
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g / jnp.linalg.norm(w)
    return update, var1, var2
