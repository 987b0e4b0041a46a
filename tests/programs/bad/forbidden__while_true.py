# expect: forbidden
# an infinite while loop
def update_fn(w, g, var1, var2, t, d, t_p, b_p, l_p, key):
    update = g
    while True:
        update = update * 0.5
    return update, var1, var2
