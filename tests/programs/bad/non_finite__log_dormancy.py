# expect: non_finite
# log of dormancy: a dead neuron has d = 0
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g * jnp.log(d)
    return update, var1, var2
