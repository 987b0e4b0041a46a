# expect: runtime
# a variable used before it is assigned
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = m * g
    m = 0.9
    return update, var1, var2
